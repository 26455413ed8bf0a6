"""Provisioning: each step idempotent (skipped when done and verified), verifiable, resumable.

    runner.py      the plan for a request, run / --verify / --dry-run over it
    host.py        what this machine can run (Core ML needs macOS 13.1+ on Apple Silicon)
    catalog.py     the built-in catalog plus KITTY_COREML_CATALOG entries
    toolchain.py   ml-stable-diffusion at the pinned commit; StableDiffusionSample and the worker built
    download.py    resumable, size- and sha256-checked downloads from the Hugging Face hub
    modelstep.py   a catalog model downloaded, extracted, validated and registered
    portable.py    the diffusers extra and the smoke model (the portable engine)
    sdcpp.py       stable-diffusion.cpp built into this Python for the machine's backend (CUDA, Metal, CPU)
    links.py       the commands linked into a folder on PATH
    inventory.py   `kitty-coreml models list`
    progress.py    progress bars and lines on stderr
    smoke.py       the smoke model itself
"""
