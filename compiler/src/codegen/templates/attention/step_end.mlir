        scf.yield %nm0, %nm1, %ln0, %ln1, {{next}} : {{state}}
        } else {
        scf.yield %m0, %m1, %l0, %l1, {{kept}} : {{state}}
        }
        scf.yield {{updated}}, {{words}} : {{types}}
