"""Reading images and masks from disk and turning them into tensors: the leaf every other layer builds on."""
