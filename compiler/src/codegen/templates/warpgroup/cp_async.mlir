%{{v}}_s = arith.addi {{src}}, {{gk}} : index
%{{v}}_si = arith.index_cast %{{v}}_s : index to i64
%{{v}}_sp = llvm.inttoptr %{{v}}_si : i64 to !llvm.ptr<1>
%{{v}}_d = arith.addi {{stage}}, {{at}} : index
%{{v}}_di = arith.index_cast %{{v}}_d : index to i64
%{{v}}_dp = llvm.inttoptr %{{v}}_di : i64 to !llvm.ptr<3>
nvvm.cp.async.shared.global %{{v}}_dp, %{{v}}_sp, 16, cache = cg : !llvm.ptr<3>, !llvm.ptr<1>
