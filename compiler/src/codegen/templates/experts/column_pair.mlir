        %{{name}}_o = arith.addi %rb, {{col}} : index
        %{{name}}_wi = arith.divui %{{name}}_o, %c2 : index
        %{{name}}_w = memref.load %hid[%{{name}}_wi] : memref<?xi32>
        %{{name}}_lo = arith.shli %{{name}}_w, %s16 : i32
        %{{name}}_hi = arith.andi %{{name}}_w, %hmask : i32
        %{{name}}_h0 = arith.bitcast %{{name}}_lo : i32 to f32
        %{{name}}_h1 = arith.bitcast %{{name}}_hi : i32 to f32
        %{{name}}_c1 = arith.addi {{col}}, %c1 : index
