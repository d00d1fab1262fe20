          scf.if %in_{{u}} {
            %used_{{u}} = arith.andi %local_{{u}}, %nz_{{u}} : i1
            %s_{{u}}_32 = arith.index_cast %s_{{u}} : index to i32
            %p_{{u}} = arith.select %used_{{u}}, %s_{{u}}_32, %m1 : i32
            memref.store %p_{{u}}, %pos[%s_{{u}}] : memref<?xi32>
            %l_{{u}}_32 = arith.trunci %loc_{{u}} : i64 to i32
            %le_{{u}} = arith.select %local_{{u}}, %l_{{u}}_32, %z32 : i32
            memref.store %le_{{u}}, %eid[%s_{{u}}] : memref<?xi32>
          }
