"""pip install of the ROS-free engine (models, vocabulary, smoothing, rendering, tools).

The ROS 2 package itself is built by colcon from CMakeLists.txt (it generates the
ovseg_ros.msg / ovseg_ros.srv interfaces); this file lets the engine be used and tested
without ROS: ``pip install -c constraints/common.txt .``.
"""

from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["ovseg_ros", "ovseg_ros.*"]),
    python_requires=">=3.10",
    # torch 2.11 is the oldest tested (the GPU machine's); CUDA graphs in the node need 2.13 (README).
    # huggingface_hub, safetensors and tqdm (fetch_weights) also come with open_clip_torch; named as used directly.
    install_requires=["torch>=2.11", "torchvision>=0.26", "open_clip_torch", "huggingface_hub", "safetensors", "tqdm", "numpy", "scipy", "opencv-python-headless", "Pillow", "rosbags"],
    package_data={"ovseg_ros.data": ["*.txt"]},
    entry_points={"console_scripts": ["ovseg-check-parity = ovseg_ros.commands.check_parity:main", "ovseg-fetch-weights = ovseg_ros.commands.fetch_weights:main"]},
)
