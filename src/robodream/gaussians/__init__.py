"""3D Gaussian splatting: differentiable rasteriser (CPU tiled path, dense reference, gsplat on CUDA)."""
