"""Where each downloadable dataset comes from: a leaf module, so adapters and the downloader both read it.

URLs and checksums are also config values (`data.url`, `data.sha256`) because official URLs move.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class DownloadSpec:
    """Where a dataset comes from and what its archive unpacks to."""

    name: str                    # folder under the data directory: data/<name>
    url: str | None              # None: no stable public URL, manual download only
    sha256: str | None           # None: unknown, the observed hash is recorded on first download
    archive: str                 # file name the archive is stored under: data/<name>/<archive>
    expect: tuple[str, ...]      # entries the dataset root holds (found anywhere in the archive, then checked)
    homepage: str = ""           # where a person can fetch it by hand


MVTEC_CATEGORIES = ("bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal_nut", "pill", "screw",
              "tile", "toothbrush", "transistor", "wood", "zipper")
BTAD_CATEGORIES = ("01", "02", "03")


DTD = DownloadSpec(
    name="dtd",
    url="https://www.robots.ox.ac.uk/~vgg/data/dtd/download/dtd-r1.0.1.tar.gz",
    sha256="e42855a52a4950a3b59612834602aa253914755c95b0cff9ead6d07395f8e205",
    archive="dtd-r1.0.1.tar.gz",
    expect=("images",),
    homepage="https://www.robots.ox.ac.uk/~vgg/data/dtd/",
)


def manual_route(spec: DownloadSpec, target: Path, url: str | None = None) -> str:
    """How to place a dataset by hand (the sentence every download error ends with)."""
    source = url or spec.url or spec.homepage or "the dataset's homepage"
    return (f"download {spec.archive} by hand from {source} and put it at {target / spec.archive}, "
            f"or extract it yourself so that {target} holds {', '.join(spec.expect)} (then set data.root={target}); "
            f"then run the same command again (`prn download {spec.name}` or your training command)")


MVTEC = DownloadSpec(
    name="mvtec",
    url="https://www.mydrive.ch/shares/150996/b52ecdcbf521176e9db9c731f2304b27/download/420938113-1629960298/"
        "mvtec_anomaly_detection.tar.xz",
    sha256="cf4313b13603bec67abb49ca959488f7eedce2a9f7795ec54446c649ac98cd3d",
    archive="mvtec_anomaly_detection.tar.xz",
    expect=MVTEC_CATEGORIES,
    homepage="https://www.mvtec.com/company/research/datasets/mvtec-ad",
)

BTAD = DownloadSpec(
    name="btad",
    url="https://avires.dimi.uniud.it/papers/btad/btad.zip",
    sha256="461c9387e515bfed41ecaae07c50cf6b10def647b36c9e31d239ab2736b10d2a",
    archive="btad.zip",
    expect=BTAD_CATEGORIES,  # the archive holds BTech_Dataset_transformed/{01,02,03}; that folder becomes data/btad
    homepage="https://github.com/pankajmishra000/VT-ADL",
)

DAGM = DownloadSpec(
    name="dagm",
    url=None,  # no stable direct link: the organisers' page moved (now on Zenodo, "DAGM 2007 competition dataset")
    sha256=None,
    archive="dagm2007.zip",
    expect=("Class1",),
    homepage="https://hci.iwr.uni-heidelberg.de/content/weakly-supervised-learning-industrial-optical-inspection "
             "(or Zenodo: search 'DAGM 2007 competition dataset')",
)

KSDD2 = DownloadSpec(
    name="ksdd2",
    url="https://go.vicos.si/kolektorsdd2",
    sha256=None,  # unknown: the observed hash is recorded on first download
    archive="KolektorSDD2.zip",
    expect=("train", "test"),
    homepage="https://www.vicos.si/resources/kolektorsdd2/",
)

DOWNLOAD_SPECS: dict[str, DownloadSpec] = {spec.name: spec for spec in (MVTEC, BTAD, DAGM, KSDD2, DTD)}


def fetch_hint(spec: DownloadSpec, root: str | Path) -> str:
    """What to do when a dataset is not at `root`: the download command, or the manual route."""
    return (f"run `prn download {spec.name}` to fetch it into data/{spec.name} (data.url overrides the URL), "
            f"or {manual_route(spec, Path(root))}")
