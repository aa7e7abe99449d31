"""Methods from the papers: transforms of the FP model and calibration procedures."""
