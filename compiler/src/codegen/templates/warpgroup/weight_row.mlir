%{{v}}_bn = arith.addi %nb0, {{row}} : index
%{{v}}_bnl = arith.constant {{last}} : index
%{{v}}_bnc = arith.minui %{{v}}_bn, %{{v}}_bnl : index
