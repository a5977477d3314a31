#!/bin/bash
# Session 11 probe: what jax 0.11.2 on the device offers for PDL and profiling.
set -x
JAXDIR=$(python3 -c "import jax,os;print(os.path.dirname(jax.__file__))")
JAXLIBDIR=$(python3 -c "import jaxlib,os;print(os.path.dirname(jaxlib.__file__))")
grep -rn "uses_pdl\|use_pdl\|enable_pdl" $JAXDIR --include=*.py | head -20
grep -rn "griddepcontrol" $JAXDIR --include=*.py | grep -v "_p\b" | head -10
ls $JAXLIBDIR/.. | grep -i "jax_cuda\|plugin" 
for f in $(python3 -c "import glob,site,os;import jax_plugins;print(' '.join(glob.glob(os.path.dirname(jax_plugins.__file__)+'/**/*.so',recursive=True)))" 2>/dev/null); do echo "== $f"; strings $f | grep -i "programmatic\|LaunchKernelEx\|pdl" | head -8; done
which ncu nsys nvdisasm cuobjdump 2>&1 | head
ls /usr/local/cuda*/bin 2>/dev/null | head -40
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem --format=csv
