# Every image: CUDA versions x variants, as data. `docker buildx bake` builds `default`;
# `docker buildx bake all`, a variant (`docker buildx bake full`) or a CUDA version (`bake cu126`).
# Kept to literals, references and ${} templates (no conditionals, no for expressions): the test
# suite expands this matrix without a Docker engine.

variable "REGISTRY" {
  default = "ghcr.io/comfyui-docker/comfyui"
}

variable "TAG" {
  default = "dev"
}

variable "REVISION" {
  default = "unknown"
}

# The pins, as in config/comfyui.ref and config/comfyui-legacy.ref (a test keeps them equal).
variable "COMFYUI_REF" {
  default = "2f35f4a08176d993cded35dac3332be4f7287f41"
}

variable "COMFYUI_LEGACY_REF" {
  default = "b1693ecba9f5b65f8c80ab36b195ab963ec92413"
}

# For each CUDA line, the newest torch with wheels for it that the pinned ComfyUI accepts. torch stops
# at 2.6 for CUDA 12.4 and ComfyUI 0.31+ needs torch 2.7 (comfy-kitchen 0.2.28), so cu124 is a legacy
# line on the last ComfyUI that runs there; from torch 2.12 PyTorch builds for 12.6 and 13.0 only, so
# cu128 stays on 2.11. driver: the NVIDIA driver it needs at least; gpus: what its torch has kernels
# for (the README's table is checked against these).
variable "CUDA" {
  default = [
    {
      name        = "cu124"
      version     = "12.4"
      base        = "nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04"
      torch_index = "https://download.pytorch.org/whl/cu124"
      torch       = "2.6.0"
      torchvision = "0.21.0"
      torchaudio  = "2.6.0"
      comfyui     = COMFYUI_LEGACY_REF
      driver      = "550"
      gpus        = "Maxwell to Hopper (sm_50-sm_90), no Blackwell"
    },
    {
      name        = "cu126"
      version     = "12.6"
      base        = "nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04"
      torch_index = "https://download.pytorch.org/whl/cu126"
      torch       = "2.14.1"
      torchvision = "0.29.1"
      torchaudio  = "2.11.0"
      comfyui     = COMFYUI_REF
      driver      = "560"
      gpus        = "Maxwell to Hopper (sm_50-sm_90), no Blackwell"
    },
    {
      name        = "cu128"
      version     = "12.8"
      base        = "nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04"
      torch_index = "https://download.pytorch.org/whl/cu128"
      torch       = "2.11.0"
      torchvision = "0.26.0"
      torchaudio  = "2.11.0"
      comfyui     = COMFYUI_REF
      driver      = "570"
      gpus        = "Turing to Blackwell (sm_75-sm_120)"
    },
    {
      name        = "cu130"
      version     = "13.0"
      base        = "nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04"
      torch_index = "https://download.pytorch.org/whl/cu130"
      torch       = "2.14.1"
      torchvision = "0.29.1"
      torchaudio  = "2.11.0"
      comfyui     = COMFYUI_REF
      driver      = "580"
      gpus        = "Turing to Blackwell (sm_75-sm_120)"
    },
  ]
}

# nodes: the lists in config/nodes/ a variant installs (space-separated); target: the Dockerfile stage;
# build_tools: a compiler in the image, for custom nodes installed at run time that build a wheel.
variable "VARIANTS" {
  default = [
    { name = "minimal", nodes = "minimal", target = "runtime", build_tools = "false" },
    { name = "standard", nodes = "minimal standard", target = "runtime", build_tools = "true" },
    { name = "full", nodes = "minimal standard full", target = "runtime", build_tools = "true" },
    { name = "dev", nodes = "minimal standard full dev", target = "dev", build_tools = "true" },
  ]
}

target "_common" {
  context    = "."
  dockerfile = "docker/Dockerfile"
  platforms  = ["linux/amd64"]
  args = {
    REVISION = REVISION
    VERSION  = TAG
  }
}

target "image" {
  inherits = ["_common"]
  name     = "${variant.name}-${cuda.name}"
  matrix = {
    variant = VARIANTS
    cuda    = CUDA
  }
  target = variant.target
  args = {
    CUDA_BASE           = cuda.base
    COMFYUI_REF         = cuda.comfyui
    CUDA_VERSION        = cuda.version
    TORCH_INDEX         = cuda.torch_index
    TORCH_VERSION       = cuda.torch
    TORCHVISION_VERSION = cuda.torchvision
    TORCHAUDIO_VERSION  = cuda.torchaudio
    NODE_LISTS          = variant.nodes
    BUILD_TOOLS         = variant.build_tools
    VARIANT             = variant.name
  }
  tags = [
    "${REGISTRY}:${variant.name}-${cuda.name}",
    "${REGISTRY}:${variant.name}-${cuda.name}-${TAG}",
  ]
}

# The recommended pair also answers to `latest`.
target "latest" {
  inherits = ["standard-cu128"]
  tags     = ["${REGISTRY}:latest"]
}

# A smoke test of one image's parts fitting together (startup, ComfyUI's imports), built, not pushed.
target "test" {
  inherits = ["minimal-cu128"]
  target   = "test"
  tags     = []
  output   = ["type=cacheonly"]
}

group "default" {
  targets = ["standard-cu128", "latest"]
}

group "all" {
  targets = ["image", "latest"]
}

group "minimal" {
  targets = ["minimal-cu124", "minimal-cu126", "minimal-cu128", "minimal-cu130"]
}

group "standard" {
  targets = ["standard-cu124", "standard-cu126", "standard-cu128", "standard-cu130"]
}

group "full" {
  targets = ["full-cu124", "full-cu126", "full-cu128", "full-cu130"]
}

group "dev" {
  targets = ["dev-cu124", "dev-cu126", "dev-cu128", "dev-cu130"]
}

group "cu124" {
  targets = ["minimal-cu124", "standard-cu124", "full-cu124", "dev-cu124"]
}

group "cu126" {
  targets = ["minimal-cu126", "standard-cu126", "full-cu126", "dev-cu126"]
}

group "cu128" {
  targets = ["minimal-cu128", "standard-cu128", "full-cu128", "dev-cu128"]
}

group "cu130" {
  targets = ["minimal-cu130", "standard-cu130", "full-cu130", "dev-cu130"]
}
