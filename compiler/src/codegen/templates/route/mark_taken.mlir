          %wi = arith.index_cast {{i}} : i32 to index
          scf.if %wlane0 {
            %so = arith.addi %obase, %s : index
            %wi64 = arith.index_cast %wi : index to i64
            %wif = arith.sitofp %wi64 : i64 to f32
            memref.store {{sc}}, %a1[%so] : {{m_k}}
            memref.store %wif, %a2[%so] : {{m_k}}
          }
          %owner = arith.remui %wi, %c32 : index
          %mine = arith.cmpi eq, %owner, %lane : index
          %wm = arith.divui %wi, %c32 : index
          %wm64 = arith.index_cast %wm : index to i64
          %nb = arith.shli %wo64, %wm64 : i64
          %marked = arith.ori %mask, %nb : i64
          %nmask = arith.select %mine, %marked, %mask : i64
          scf.yield %nmask : i64
        }
