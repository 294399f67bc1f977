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

variable "COMFYUI_REF" {
  default = "002f2bedd6e4f6a0f7436ab7ce2fb8021483904c"
}

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
    },
    {
      name        = "cu126"
      version     = "12.6"
      base        = "nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04"
      torch_index = "https://download.pytorch.org/whl/cu126"
      torch       = "2.9.1"
      torchvision = "0.24.1"
      torchaudio  = "2.9.1"
    },
    {
      name        = "cu128"
      version     = "12.8"
      base        = "nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04"
      torch_index = "https://download.pytorch.org/whl/cu128"
      torch       = "2.9.1"
      torchvision = "0.24.1"
      torchaudio  = "2.9.1"
    },
    {
      name        = "cu130"
      version     = "13.0"
      base        = "nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04"
      torch_index = "https://download.pytorch.org/whl/cu130"
      torch       = "2.9.1"
      torchvision = "0.24.1"
      torchaudio  = "2.9.1"
    },
  ]
}

# nodes: the lists in config/nodes/ a variant installs (space-separated); target: the Dockerfile stage.
variable "VARIANTS" {
  default = [
    { name = "minimal", nodes = "minimal", target = "runtime" },
    { name = "standard", nodes = "minimal standard", target = "runtime" },
    { name = "full", nodes = "minimal standard full", target = "runtime" },
    { name = "dev", nodes = "minimal standard full dev", target = "dev" },
  ]
}

target "_common" {
  context    = "."
  dockerfile = "docker/Dockerfile"
  platforms  = ["linux/amd64"]
  args = {
    COMFYUI_REF = COMFYUI_REF
    REVISION    = REVISION
    VERSION     = TAG
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
    CUDA_VERSION        = cuda.version
    TORCH_INDEX         = cuda.torch_index
    TORCH_VERSION       = cuda.torch
    TORCHVISION_VERSION = cuda.torchvision
    TORCHAUDIO_VERSION  = cuda.torchaudio
    NODE_LISTS          = variant.nodes
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
