"""Placeholder for the main job until the nodes land: says what it will do."""

print(
    "dev/run will execute workflows/ TCD text-to-image headless through a real ComfyUI server,\n"
    "on random-weight SD1.5 models built at run time when no real checkpoint is found,\n"
    "and print where the image went and how long each stage took."
)
