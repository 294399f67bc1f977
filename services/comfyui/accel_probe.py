"""Run by ComfyUI's own Python (not the stack's): do triton and SageAttention really run on this GPU?

A real kernel launch each, on small tensors, and one JSON line on stdout. Imports nothing of the
stack. A file, not `python -c`: triton's JIT reads the kernel's source from it.
"""

import json
import sys


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:300]


def main() -> int:
    out = {"cuda": False, "triton": None, "sageattention": None}
    try:
        import torch
    except Exception as exc:  # noqa: BLE001 - any failure is the answer
        out["error"] = "torch: " + _error(exc)
        print(json.dumps(out))
        return 0
    if not torch.cuda.is_available():
        out["error"] = "no CUDA device"
        print(json.dumps(out))
        return 0
    out["cuda"] = True
    try:
        import triton
        import triton.language as tl

        @triton.jit
        def add(x, y, result, n, block: tl.constexpr):
            offsets = tl.program_id(0) * block + tl.arange(0, block)
            mask = offsets < n
            tl.store(result + offsets, tl.load(x + offsets, mask=mask) + tl.load(y + offsets, mask=mask), mask=mask)

        x = torch.ones(1024, device="cuda")
        result = torch.empty_like(x)
        add[(4,)](x, x, result, 1024, block=256)
        torch.cuda.synchronize()
        out["triton"] = {"ok": bool((result == 2).all()), "version": triton.__version__}
    except ImportError:
        out["triton"] = {"ok": False, "error": "not installed"}
    except Exception as exc:  # noqa: BLE001
        out["triton"] = {"ok": False, "error": _error(exc)}
    try:
        import sageattention
        from sageattention import sageattn

        q = torch.randn(1, 8, 256, 64, device="cuda", dtype=torch.float16)
        attended = sageattn(q, q, q, is_causal=False)
        torch.cuda.synchronize()
        version = getattr(sageattention, "__version__", None)
        out["sageattention"] = {"ok": bool(torch.isfinite(attended).all()), "version": version}
    except ImportError:
        out["sageattention"] = {"ok": False, "error": "not installed"}
    except Exception as exc:  # noqa: BLE001
        out["sageattention"] = {"ok": False, "error": _error(exc)}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
