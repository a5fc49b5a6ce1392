"""Lets a CUDA build of torchvision import next to a CPU build of torch (test machines only).

PyPI's torchvision wheel is built for CUDA; next to CPU torch its C extension does not load, and importing
torchvision then fails registering fake kernels for two operators the extension would have defined. Defining
those two operator schemas first is enough for ComfyUI, which never calls them. The test installs this folder
into ComfyUI's custom_nodes only when `import torchvision` fails that way.
"""

import sys

import torch

library = torch.library.Library("torchvision", "DEF")
library.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
library.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
# ComfyUI drops this module after running it, and a Library removes its definitions when it is collected.
sys.modules["raiiaf_test_torchvision_shim"] = sys.modules.get(__name__) or type(sys)("raiiaf_test_torchvision_shim")
sys.modules["raiiaf_test_torchvision_shim"].library = library
