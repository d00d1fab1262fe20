        %c2x = arith.constant 2 : index
        %cstep = arith.constant {{step}} : index
        %cgend = arith.constant {{groups_end}} : index
        %dg:{{n}} = scf.for %q0 = %lane to %cgend step %cstep iter_args({{iters}}) -> ({{types}}) {
{{rounds}}
          scf.yield {{next}} : {{types}}
        }
{{tail}}
{{part}}
{{sums}}
