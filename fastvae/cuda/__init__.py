"""The CUDA C side of fastvae: finding the sources in kernels/, compiling them (NVRTC), and what launches them."""
