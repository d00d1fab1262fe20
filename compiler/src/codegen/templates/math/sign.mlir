        %z = arith.constant 0.0 : f32
        %one = arith.constant 1.0 : f32
        %mone = arith.constant -1.0 : f32
        %pos = arith.cmpf ogt, %x, %z : f32
        %neg = arith.cmpf olt, %x, %z : f32
        %sn = arith.select %neg, %mone, %z : f32
        %r = arith.select %pos, %one, %sn : f32
