"""Development tools, outside the runtime package: benchmarks (``bench``, ``bench_*``) and the GPU
check (``device_check``, ``cuda_smoke``): ``python -m ovseg_dev.bench ...``."""
