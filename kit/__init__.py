"""facekit: cross-validation, tuning, ensembling and submission for the face age & gender competition."""
