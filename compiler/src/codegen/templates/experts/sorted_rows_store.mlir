          %d{{u}} = arith.addi %to, %w{{u}} : index
          memref.store %v{{u}}, %dst[%d{{u}}] : memref<?xvector<4xi32>>
