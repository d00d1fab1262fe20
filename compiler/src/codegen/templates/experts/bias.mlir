        %{{out}}_b = scf.if %hb -> (f32) {
          %bo = arith.addi %eb, {{col}} : index
          %bv = memref.load %bias[%bo] : memref<?xf32>
          scf.yield %bv : f32
        } else {
          scf.yield %zero : f32
        }
        %{{out}} = arith.addf {{value}}, %{{out}}_b : f32
