        %{{out}}_l = arith.truncf {{lo}} : f32 to bf16
        %{{out}}_h = arith.truncf {{hi}} : f32 to bf16
        %{{out}}_li = arith.bitcast %{{out}}_l : bf16 to i16
        %{{out}}_hi = arith.bitcast %{{out}}_h : bf16 to i16
        %{{out}}_lw = arith.extui %{{out}}_li : i16 to i32
        %{{out}}_hw = arith.extui %{{out}}_hi : i16 to i32
        %{{out}}_hs = arith.shli %{{out}}_hw, %c16i : i32
        %{{out}} = arith.ori %{{out}}_lw, %{{out}}_hs : i32
