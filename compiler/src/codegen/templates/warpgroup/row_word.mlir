%{{v}}_ar = arith.addi {{r0}}, {{row}} : index
%{{v}}_ain = arith.cmpi ult, %{{v}}_ar, %cnt : index
%{{v}}_aslot = scf.if %{{v}}_ain -> (index) {
  %{{v}}_al = arith.addi %lbase, %{{v}}_ar : index
  %{{v}}_as32 = memref.load %lists[%{{v}}_al] : memref<?xi32>
  %{{v}}_as = arith.index_cast %{{v}}_as32 : i32 to index
  scf.yield %{{v}}_as : index
} else {
  scf.yield %firsts : index
}
%{{v}}_asr = arith.divui %{{v}}_aslot, %cdiv : index
%{{v}}_asb = arith.muli %{{v}}_asr, %cRB : index
%{{v}}_asc = arith.addi %{{v}}_asb, %cjb : index
%{{v}}_aq = arith.addi %srcx, %{{v}}_asc : index
