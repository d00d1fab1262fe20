          %is_{{u}} = arith.cmpi eq, %loc_{{u}}, %bid64 : i64
          %mine_{{u}}_0 = arith.andi %is_{{u}}, %nz_{{u}} : i1
          %mine_{{u}} = arith.andi %mine_{{u}}_0, %in_{{u}} : i1
          scf.if %mine_{{u}} {
            %at_{{u}}_32 = memref.atomic_rmw addi %one32, %cnt[%c0] : (i32, memref<1xi32, 3>) -> i32
            %at_{{u}} = arith.index_cast %at_{{u}}_32 : i32 to index
            %li_{{u}} = arith.addi %lbase, %at_{{u}} : index
            %s_{{u}}_32 = arith.index_cast %s_{{u}} : index to i32
            memref.store %s_{{u}}_32, %lists[%li_{{u}}] : memref<?xi32>
          }
