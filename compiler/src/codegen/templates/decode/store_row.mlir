            %rc{{row}} = arith.constant {{row}} : index
            %rok{{row}} = arith.cmpi ult, %rc{{row}}, %rows : index
            scf.if %rok{{row}} {
              %sl{{row}}0 = arith.addi %lbase, %r0 : index
              %sl{{row}} = arith.addi %sl{{row}}0, %rc{{row}} : index
              %ss{{row}}32 = memref.load %lists[%sl{{row}}] : memref<?xi32>
              %ss{{row}} = arith.index_cast %ss{{row}}32 : i32 to index
              %sb{{row}} = arith.muli %ss{{row}}, %cN : index
{{columns}}
            }
