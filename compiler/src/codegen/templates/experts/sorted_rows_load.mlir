          %o{{u}} = arith.constant {{offset}} : index
          %w{{u}} = arith.addi %w, %o{{u}} : index
          %f{{u}} = arith.addi %from, %w{{u}} : index
          %v{{u}} = memref.load %src[%f{{u}}] : memref<?xvector<4xi32>>
