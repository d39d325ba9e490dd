"""Builds ``fixedbranch._C``: a C++ extension always, CUDA kernels when a toolkit and a CUDA torch are present.

Environment:
    FORCE_CUDA=1    build the CUDA kernels even when no GPU is visible (needs CUDA_HOME and a CUDA torch).
    FORCE_CPU=1     never build the CUDA kernels.
    DEBUG=1         -O0 -g instead of -O3.
    TORCH_CUDA_ARCH_LIST   respected; defaults to "8.0;9.0".
"""

import glob
import os
import re
import subprocess
import sys
import sysconfig

from setuptools import find_packages, setup
from torch.utils import cpp_extension

ROOT = os.path.dirname(os.path.abspath(__file__))


def _want_cuda():
    if os.environ.get("FORCE_CPU", "0") == "1":
        return False
    if os.environ.get("FORCE_CUDA", "0") == "1":
        return True
    import torch

    return torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None and torch.cuda.is_available()


def _toolkit_cuda_major():
    """The major version of the CUDA toolkit nvcc comes from (CUDA_HOME), or None if it cannot be read."""
    try:
        out = subprocess.run([os.path.join(cpp_extension.CUDA_HOME, "bin", "nvcc"), "--version"],
                             capture_output=True, text=True, check=True).stdout
    except (OSError, TypeError, subprocess.CalledProcessError):
        return None
    found = re.search(r"release (\d+)\.", out)
    return int(found.group(1)) if found else None


def _cuda_wheel_includes():
    """Folders of the CUDA wheels torch depends on that hold headers ATen's CUDA headers include (cusparse.h, ...)
    and a minimal toolkit may lack.

    Only the wheels of the toolkit's own CUDA major version (nvidia/cu13/include for CUDA 13; the per-library folders
    of the CUDA 12 wheels), and the caller searches them after the toolkit's own include folder (-isystem): a
    cuda_runtime_api.h of another CUDA version ahead of the toolkit's would compile the kernels' host code against
    one CUDA's structs and run it against another's.
    """
    major = _toolkit_cuda_major()
    found = []
    for base in {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}:
        if major is not None and os.path.isdir(os.path.join(base, "nvidia", f"cu{major}", "include")):
            found.append(os.path.join(base, "nvidia", f"cu{major}", "include"))
        elif major is not None and major <= 12:
            found += [d for d in sorted(glob.glob(os.path.join(base, "nvidia", "*", "include")))
                      if not re.fullmatch(r"cu\d+", os.path.basename(os.path.dirname(d)))]
    return list(dict.fromkeys(found))


def _cpu_isa_flags():
    """Vector ISA flags for the CPU kernels.

    at::vec::Vectorized picks its width at compile time, so an extension built with plain flags runs its vector
    loops in scalar-emulated form. Like any source build tuned to its machine, we build for the widest ISA this
    machine has; FIXEDBRANCH_CPU_ISA=avx512|avx2|default overrides (use "default" for a portable binary).
    The module refuses to load on a CPU without the ISA it was built for (csrc/fixed_branch.cpp).
    """
    choice = os.environ.get("FIXEDBRANCH_CPU_ISA", "native")
    if choice == "native":
        flags = set()
        try:
            with open("/proc/cpuinfo") as f:
                for line in f:
                    if line.startswith("flags"):
                        flags = set(line.split(":", 1)[1].split())
                        break
        except OSError:
            pass
        if {"avx512f", "avx512bw", "avx512vl", "avx512dq", "fma"} <= flags:
            choice = "avx512"
        elif {"avx2", "fma", "f16c"} <= flags:
            choice = "avx2"
        else:
            choice = "default"
    return {
        "avx512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx2", "-mfma", "-mf16c",
                   "-DCPU_CAPABILITY_AVX512", "-DFIXEDBRANCH_ISA=\"avx512\""],
        "avx2": ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY_AVX2", "-DFIXEDBRANCH_ISA=\"avx2\""],
        "default": ['-DFIXEDBRANCH_ISA=\"default\"'],
    }[choice]


def extensions():
    debug = os.environ.get("DEBUG", "0") == "1"
    opt = ["-O0", "-g"] if debug else ["-O3"]
    openmp = [] if sys.platform == "darwin" else ["-fopenmp"]
    sources = [path for folder in ("csrc", "csrc/bank_plan", "csrc/cpu")
               for path in sorted(glob.glob(f"{folder}/*.cpp"))]
    # No -std flag: torch's cpp_extension adds the standard its own headers need (C++20 from torch 2.14 on).
    extra_compile_args = {"cxx": opt + openmp + _cpu_isa_flags()}
    define_macros = []
    include_dirs = [os.path.join(ROOT, "csrc")]
    if _want_cuda():
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
        # `python -m fixedbranch` reports the architectures the kernels were built for (';' would split the
        # command line ninja runs).
        arch_list = os.environ["TORCH_CUDA_ARCH_LIST"].replace(";", " ")
        extra_compile_args["cxx"].append(f'-DFIXEDBRANCH_CUDA_ARCHS="{arch_list}"')
        sources += sorted(glob.glob("csrc/cuda/*.cu"))
        # After the toolkit's include folder, which CUDAExtension puts after include_dirs (see _cuda_wheel_includes).
        wheel_includes = [flag for d in _cuda_wheel_includes() for flag in ("-isystem", d)]
        extra_compile_args["cxx"] += wheel_includes
        extra_compile_args["nvcc"] = opt + ["--expt-relaxed-constexpr", "-lineinfo"] + wheel_includes
        define_macros.append(("WITH_CUDA", None))
        ext = cpp_extension.CUDAExtension
    else:
        ext = cpp_extension.CppExtension
    return [
        ext(
            "fixedbranch._C",
            sources,
            include_dirs=include_dirs,
            extra_compile_args=extra_compile_args,
            extra_link_args=openmp,
            define_macros=define_macros,
        )
    ]


setup(
    name="fixedbranch",
    version="0.1.0",
    description="Fused fixed-filter branches for CNNs: conv + fixed filter bank + concat in one PyTorch op (C++/CUDA)",
    packages=find_packages(include=["fixedbranch", "fixedbranch.*"]),
    ext_modules=extensions(),
    cmdclass={"build_ext": cpp_extension.BuildExtension},
    python_requires=">=3.9",
    install_requires=["torch"],
)
