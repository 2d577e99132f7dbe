"""course_lib: the small, verified library behind "Transformers, step by step".

Every notebook imports its building blocks from here, so there is one source of
truth; every module is tested against an independent reference (PyTorch's own
layers, Hugging Face `transformers`, tiktoken, or brute force on tiny inputs).
"""

from course_lib.env import get_device, get_scale, pick, seed_everything

__version__ = "0.1.0"
REPO_URL = "https://github.com/transformers-step-by-step/course"

__all__ = ["REPO_URL", "get_device", "get_scale", "pick", "seed_everything", "__version__"]
