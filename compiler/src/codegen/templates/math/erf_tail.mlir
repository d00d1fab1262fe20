        %{{out}}_pe = arith.mulf %{{out}}_poly, %{{out}}_e : f32
        %{{out}}_y = arith.subf %{{out}}_one, %{{out}}_pe : f32
        %{{out}}_neg = arith.negf %{{out}}_y : f32
        %{{out}}_z = arith.constant 0.0 : f32
        %{{out}}_isneg = arith.cmpf olt, {{x}}, %{{out}}_z : f32
        %{{out}} = arith.select %{{out}}_isneg, %{{out}}_neg, %{{out}}_y : f32
