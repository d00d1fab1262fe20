          %sq{{q}} = arith.constant {{row}} : index
          %sr{{q}} = arith.addi %srow, %sq{{q}} : index
          %sin{{q}} = arith.cmpi ult, %sr{{q}}, %rows : index
          %sb{{q}} = scf.if %sin{{q}} -> (index) {
            %sl{{q}}0 = arith.addi %lbase, %r0 : index
            %sl{{q}} = arith.addi %sl{{q}}0, %sr{{q}} : index
            %ss{{q}}32 = memref.load %lists[%sl{{q}}] : memref<?xi32>
            %ss{{q}} = arith.index_cast %ss{{q}}32 : i32 to index
            %sv{{q}} = arith.divui %ss{{q}}, %cdiv : index
            %so{{q}} = arith.muli %sv{{q}}, %crow : index
            scf.yield %so{{q}} : index
          } else {
            scf.yield %c0 : index
          }
          %xr{{q}} = arith.muli %sr{{q}}, %cRW : index
          %xo{{q}} = arith.addi %xr{{q}}, %sw : index
