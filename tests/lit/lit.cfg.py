# The lit suite: IR-in / IR-out tests of ppmoe's passes, one file per pass or concern, run by
# `ppmoe opt` (and `ppmoe inspect` to make inputs from the fixtures) and checked with LLVM 22's
# FileCheck. `bash scripts/lit` runs it (scripts/test does); PPMOE names the binary.
import os

import lit.formats

config.name = "ppmoe"
config.test_format = lit.formats.ShTest(execute_external=True)
config.suffixes = [".mlir"]
config.test_source_root = os.path.dirname(__file__)
repo = os.path.dirname(os.path.dirname(config.test_source_root))
config.test_exec_root = os.path.join(repo, "target", "lit")

ppmoe = os.environ.get("PPMOE", os.path.join(repo, "target", "debug", "ppmoe"))
config.substitutions.append(("%ppmoe", ppmoe))
config.substitutions.append(("%fixtures", os.path.join(repo, "tests", "fixtures")))
# The ptx stage's passes, in order (compiler/src/pipeline/mod.rs).
config.substitutions.append(
    (
        "%ptx-passes",
        "ppmoe-attach-target, convert-scf-to-cf, convert-math-to-llvm, convert-nvvm-to-llvm, "
        "convert-gpu-to-nvvm, convert-arith-to-llvm, convert-cf-to-llvm, "
        "reconcile-unrealized-casts, gpu-module-to-binary",
    )
)

# FileCheck and not from LLVM 22 (Debian's llvm-22-tools).
llvm_bin = "/usr/lib/llvm-22/bin"
config.environment["PATH"] = os.pathsep.join([llvm_bin, os.environ.get("PATH", "")])
