        %{{out}}_c = arith.constant {{off}} : index
        %{{out}}_i = arith.addi {{base}}, %{{out}}_c : index
        %{{out}} = memref.load %a{{k}}[%{{out}}_i] : memref<{{n}}xf32>
