          %xq{{tag}}_{{half}}c = arith.constant {{half}} : index
          %xq{{tag}}_{{half}}0 = arith.muli {{q}}, %c2x : index
          %xq{{tag}}_{{half}}1 = arith.addi %xq{{tag}}_{{half}}0, %xo : index
          %xq{{tag}}_{{half}} = arith.addi %xq{{tag}}_{{half}}1, %xq{{tag}}_{{half}}c : index
          %xw{{tag}}_{{half}} = memref.load %src[%xq{{tag}}_{{half}}] : memref<?xvector<4xi32>>
