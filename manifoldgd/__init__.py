"""ManifoldGD (Roy et al., CVPR 2026): MGD^3's mode guidance plus a tangent-plane manifold term
around hierarchical IPC centres. Method layer: imports ``ddcore`` and ``mgd3``; only configs
import it."""
