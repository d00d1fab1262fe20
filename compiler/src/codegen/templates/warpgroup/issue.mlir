%{{n}}_p = arith.divui {{g}}, %cNK : index
%{{n}}_k = arith.remui {{g}}, %cNK : index
%{{n}}_r0 = arith.muli %{{n}}_p, %cP : index
%{{n}}_gk = arith.muli %{{n}}_k, %c128 : index
%{{n}}_st = arith.remui {{g}}, %cST : index
%{{n}}_ss = arith.muli %{{n}}_st, %cSB : index
%{{n}}_sa = arith.addi %smx, %{{n}}_ss : index
%{{n}}_sb = arith.addi %{{n}}_sa, %cRO : index
{{copies}}
