%{{o}}at = arith.addi %{{r}}base, %{{o}}col : index
{{pair}}
%{{o}}by = arith.muli %{{o}}at, %c2 : index
%{{o}}ad = arith.addi %dstx, %{{o}}by : index
{{pointer}}
llvm.store %{{o}}p, %{{o}}_ptr {alignment = 4 : i64} : vector<2xbf16>, !llvm.ptr<1>
