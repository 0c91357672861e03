"""Microscope's views of a unit beyond its renders and examples, one module each: caricatures (what a photo's
activations at a layer look like when exaggerated), atlases (a layer's activation space laid out as a map of
renders) and circuits (the strongest inputs from the layer before). Each reads an artifact and a model and
writes its element back."""
