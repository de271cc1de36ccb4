"""What the curvature says about a point of training: critical points, saddles, landscapes, noise, sharpness."""
