          %{{g}}e{{j}}32 = memref.load %eid[%{{g}}s{{j}}] : memref<?xi32>
          %{{g}}e{{j}} = arith.index_cast %{{g}}e{{j}}32 : i32 to index
          %{{g}}eb{{j}}0 = arith.muli %{{g}}e{{j}}, %ch : index
          %{{g}}eb{{j}} = arith.addi %{{g}}eb{{j}}0, %col : index
