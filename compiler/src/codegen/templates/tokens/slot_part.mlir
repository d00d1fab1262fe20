        %sp{{j}} = arith.constant {{part}} : index
        %sq{{j}} = arith.addi %sk, %sp{{j}} : index
        %sv{{j}} = memref.load %parts[%sq{{j}}] : memref<{{parts}}xf32, 3>
        %y{{j}} = arith.addf {{sum}}, %sv{{j}} : f32
