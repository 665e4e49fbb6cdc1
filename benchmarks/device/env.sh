# Sourced on the device machine by the step scripts: where the carried packages, assets and runs live there.
# /tmp survives between calls while the machine stays warm (30 s after a call), not longer.
export DEVRUN=/tmp/devrun
export PYTHONPATH="$DEVRUN/site:$PWD"
export SDLORA_ASSETS="$DEVRUN/assets"
export SDLORA_IMAGE_CACHE="$DEVRUN/images"   # resized once, shared by every process (written atomically)
export PYTHONUNBUFFERED=1
export W="$DEVRUN/w"                          # job files write their run folders under $W (--out $W)
