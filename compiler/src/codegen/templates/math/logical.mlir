        %z = arith.constant 0.0 : f32
        %tx = arith.cmpf une, %x, %z : f32
        %ty = arith.cmpf une, %y, %z : f32
        %t = {{op}} %tx, %ty : i1
        %r = arith.uitofp %t : i1 to f32
