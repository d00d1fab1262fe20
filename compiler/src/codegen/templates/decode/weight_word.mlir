              %wi{{j}}0 = arith.addi %wb{{j}}, %kcw : index
              %wi{{j}} = arith.addi %wi{{j}}0, %q : index
              %wv{{j}} = memref.load %wt[%wi{{j}}] : memref<?xvector<4xi32>>
{{unpack}}
