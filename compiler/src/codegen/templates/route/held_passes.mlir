        %wz64 = arith.constant 0 : i64
        %wo64 = arith.constant 1 : i64
        %wlane0 = arith.cmpi eq, %lane, %c0 : index
        %taken = scf.for %s = %c0 to %k step %c1 iter_args(%mask = %wz64) -> (i64) {
