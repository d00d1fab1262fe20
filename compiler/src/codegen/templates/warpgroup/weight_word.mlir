{{weight_row}}
%{{v}}_bwr = arith.addi %eN, %{{v}}_bnc : index
%{{v}}_bwb = arith.muli %{{v}}_bwr, %cRB : index
%{{v}}_bwc = arith.addi %{{v}}_bwb, %cjb : index
