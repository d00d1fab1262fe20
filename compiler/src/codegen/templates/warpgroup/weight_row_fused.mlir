%{{v}}_bup = arith.cmpi uge, {{row}}, %cHALF : index
%{{v}}_bo = arith.remui {{row}}, %cHALF : index
%{{v}}_bg = arith.addi %nb0, %{{v}}_bo : index
%{{v}}_bgl = arith.constant {{last}} : index
%{{v}}_bgc = arith.minui %{{v}}_bg, %{{v}}_bgl : index
%{{v}}_bus = arith.addi %{{v}}_bgc, %csecond : index
%{{v}}_bnc = arith.select %{{v}}_bup, %{{v}}_bus, %{{v}}_bgc : index
