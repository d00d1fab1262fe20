        %cSteps = arith.constant {{steps}} : index
        %run:{{n}} = scf.for %st = %c0 to %cSteps step %c1 iter_args(%m0 = %ninf, %m1 = %ninf, %l0 = %zero, %l1 = %zero, {{accs}}, {{words}}) -> ({{types}}) {
        %k0 = arith.muli %st, %cKeys : index
        gpu.barrier
