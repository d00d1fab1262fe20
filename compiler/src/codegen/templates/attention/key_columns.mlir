        %kb{{j}}c = arith.constant {{offset}} : index
        %ka{{j}}0 = arith.addi %k0, %kb{{j}}c : index
        %ka{{j}} = arith.addi %ka{{j}}0, %t2 : index
