"""Prints how torch_ext was built and what it runs on, for bug reports:

    python -m torch_ext.info
"""
import platform

import torch

import torch_ext


def runtime_info():
    """Facts of this process: versions, threads, devices."""
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "cuda_available": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


def main():
    for title, facts in (("build", torch_ext.build_info()), ("runtime", runtime_info())):
        print(f"torch_ext {title}:")
        for key, value in facts.items():
            print(f"  {key:16} {value}")


if __name__ == "__main__":
    main()
