"""Optional Triton import: torch CPU wheels ship without it, and the package must import anyway."""

try:
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # pragma: no cover
    triton = None
    tl = None
    HAS_TRITON = False
